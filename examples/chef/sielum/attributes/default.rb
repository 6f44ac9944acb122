# Attributes of the sielum cookbook: the same settings as the Puppet class
# sielum::agent (examples/puppet/sielum/manifests/agent.pp), one for each of its
# parameters, but for the token: node attributes are saved on the Chef server in
# clear, so the token comes from an encrypted data bag item (or a file on the node).

# The enroll server, https://HOST:8443.
default['sielum']['agent']['server'] = 'https://enroll.example.com:8443'
# `sielum-server fingerprint` on the server (public).
default['sielum']['agent']['ca_fingerprint'] = 'sha256:0000000000000000000000000000000000000000000000000000000000000000'
# The .deb or the executable that scripts/build-agent.sh builds: an https:// URL or
# file:///path on the node. Never a package index.
default['sielum']['agent']['package'] = 'https://packages.example.com/sielum/sielum-agent_0.1.0_amd64.deb'
# Its SHA-256, 64 hex digits: its line in dist/SHA256SUMS. Required.
default['sielum']['agent']['package_sha256'] = ''
# deb: dpkg installs the .deb; file: the executable goes to agent_path.
default['sielum']['agent']['install'] = 'deb'
# The token: the item's 'token' key, in an encrypted data bag
# (`knife data bag create sielum enrollment --secret-file ...`).
default['sielum']['agent']['token_data_bag'] = 'sielum'
default['sielum']['agent']['token_data_bag_item'] = 'enrollment'
# Or a file on the node that the provisioner wrote: Chef never reads it.
default['sielum']['agent']['token_file'] = nil
# The agent's cert dir (with deb, the package's unit uses /etc/sielum).
default['sielum']['agent']['cert_dir'] = '/etc/sielum'
# Where the executable is: nil for /usr/bin/sielum-agent (deb) or
# /usr/local/bin/sielum-agent (file).
default['sielum']['agent']['agent_path'] = nil
# The name admins see for this device.
default['sielum']['agent']['hostname'] = node['fqdn']
# Where the package is kept once checked.
default['sielum']['agent']['staging_dir'] = '/var/cache/sielum'
# More options for dpkg --install.
default['sielum']['agent']['dpkg_options'] = []
# The file system to install into: / on a running node, an image's directory when
# building one (dpkg --root, systemctl --root); every path is inside it.
default['sielum']['agent']['root'] = '/'
# running: enable and start the service now; enabled: only enable it under root.
default['sielum']['agent']['service'] = 'running'
