#
# Cookbook:: sielum
# Recipe:: default
#
# Installs the Sielum agent by checksum (its .deb or its single executable, never
# from a package index), enrolls this node once and enables the agent service: what
# the Puppet class sielum::agent does. remote_file checks the downloaded content
# against package_sha256 before it moves it into place; a mismatch fails the run
# before anything is installed.

require 'shellwords'

agent = node['sielum']['agent']

unless agent['install'] == 'deb' || agent['install'] == 'file'
  raise "sielum: install must be deb or file, not #{agent['install'].inspect}"
end
unless agent['package_sha256'].to_s.match?(/\A[0-9a-f]{64}\z/)
  raise 'sielum: package_sha256 must be the package\'s SHA-256, 64 hex digits (dist/SHA256SUMS)'
end
if agent['install'] == 'deb' && agent['cert_dir'] != '/etc/sielum'
  raise 'sielum: with install deb, cert_dir stays /etc/sielum (the package\'s unit uses it)'
end

prefix = agent['root'].sub(%r{/+\z}, '')
bin = agent['agent_path'] || (agent['install'] == 'deb' ? '/usr/bin/sielum-agent' : '/usr/local/bin/sielum-agent')
certs = "#{prefix}#{agent['cert_dir']}"
staged = "#{prefix}#{agent['staging_dir']}/#{::File.basename(agent['package'].sub(/[?#].*\z/, ''))}"
unit = "#{prefix}/etc/systemd/system/sielum-agent.service"
# dpkg on another root: the package's maintainer scripts run outside it, with
# DPKG_ROOT set (they honour it).
on_root = prefix.empty? ? [] : ["--root=#{agent['root']}", '--force-script-chrootless']

directory "#{prefix}#{agent['staging_dir']}" do
  mode '0700'
end

remote_file staged do
  source agent['package']
  checksum agent['package_sha256']
  mode '0600'
  backup false
end

if agent['install'] == 'deb'
  query = (['dpkg-query'] + (prefix.empty? ? [] : ["--root=#{agent['root']}"])).shelljoin
  # A first install or an upgrade (postinst restarts an agent that was running).
  execute 'sielum-agent install' do
    command ['dpkg'] + on_root + agent['dpkg_options'] + ['--install', staged]
    not_if "test \"$(#{query} -W -f='${db:Status-Abbrev}${Version}' sielum-agent 2>/dev/null)\" = " \
           "\"ii $(dpkg-deb --field #{staged.shellescape} Version)\""
  end
  installed = 'execute[sielum-agent install]'
else
  remote_file "#{prefix}#{bin}" do
    source "file://#{staged}"
    checksum agent['package_sha256']
    mode '0755'
    backup false
  end
  template unit do
    source 'sielum-agent.service.erb'
    mode '0644'
    variables(agent: bin, cert_dir: agent['cert_dir'])
  end
  installed = "remote_file[#{prefix}#{bin}]"
end

enroll = ["#{prefix}#{bin}", 'enroll', '--server', agent['server'],
          '--ca-fingerprint', agent['ca_fingerprint'], '--cert-dir', certs,
          '--hostname', agent['hostname']]
if agent['token_file']
  execute 'sielum-agent enroll' do
    command enroll + ['--token-file', agent['token_file']]
    creates "#{certs}/agent.json"
  end
else
  execute 'sielum-agent enroll' do
    command enroll
    # In the agent's environment only, never on a command line. sensitive: Chef
    # shows neither the environment nor the output of this resource (so a failure's
    # reason is hidden too: run the agent by hand to see it).
    environment lazy {
      { 'SIELUM_ENROLLMENT_TOKEN' => data_bag_item(agent['token_data_bag'], agent['token_data_bag_item'])['token'] }
    }
    sensitive true
    creates "#{certs}/agent.json"
  end
end

if agent['service'] == 'running'
  service 'sielum-agent' do
    provider Chef::Provider::Service::Systemd
    action [:enable, :start]
    subscribes :restart, installed, :delayed
    subscribes :restart, "template[#{unit}]", :delayed if agent['install'] == 'file'
  end
else
  # Without a running systemd: enable the unit in the file system, as
  # `systemctl enable` does, and systemd starts it at the next boot.
  execute 'sielum-agent enable' do
    command ['systemctl', '--root', agent['root'], 'enable', 'sielum-agent.service']
    not_if "systemctl --root #{agent['root'].shellescape} is-enabled --quiet sielum-agent.service"
  end
end
