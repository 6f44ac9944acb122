# @summary Installs the Sielum agent by checksum (its .deb or its single executable,
#   never from a package index), enrolls this node once and enables the agent service.
#
# The package is what `bash scripts/build-agent.sh` builds: the .deb
# (install => deb: /usr/bin/sielum-agent, the unit, /etc/sielum 0700) or the
# executable (install => file, at agent_path, with the unit from this module). It
# is fetched to staging_dir and checked against package_sha256 (its line in
# dist/SHA256SUMS) before it is written there: a wrong file fails the run and is
# never installed.
#
# The token is either a Sensitive value (Hiera with hiera-eyaml, a secrets lookup)
# or a file on the node that the provisioner wrote. Puppet redacts Sensitive values
# from its logs, reports and diffs; the agent gets the token in its environment
# (SIELUM_ENROLLMENT_TOKEN), never on a command line, or reads the file itself.
# A node whose cert dir holds agent.json is enrolled: the enroll exec is skipped
# and the token is not used again. Two limits of Puppet: at --debug it prints
# every Hiera lookup with its value (before lookup_options makes it Sensitive),
# and a Puppet server's catalog, cached by the agent, holds Sensitive values in
# clear. token_file avoids both: Puppet never reads that file.
#
# @example Hiera data (common.yaml), with the token encrypted by hiera-eyaml
#   sielum::agent::server: "https://enroll.example.com:8443"
#   sielum::agent::ca_fingerprint: "sha256:…"
#   sielum::agent::package: "puppet:///modules/profile/sielum-agent_0.1.0_amd64.deb"
#   sielum::agent::package_sha256: "…"   # its line in dist/SHA256SUMS
#   sielum::agent::token: ENC[PKCS7,…]
#   lookup_options:
#     sielum::agent::token:
#       convert_to: "Sensitive"
#
# @param server the enroll server, https://HOST:8443
# @param ca_fingerprint `sielum-server fingerprint` on the server (public)
# @param package the .deb or the executable: a puppet:/// or https:// URL, or a path on the node
# @param package_sha256 its SHA-256, 64 hex digits (dist/SHA256SUMS)
# @param install deb: dpkg installs the .deb; file: the executable goes to agent_path
# @param token the enrollment token, Sensitive
# @param token_file or a file on the node that holds the token
# @param cert_dir the agent's cert dir (with deb, the package's unit uses /etc/sielum)
# @param agent_path where the executable is: /usr/bin/sielum-agent with deb,
#   /usr/local/bin/sielum-agent by default with file
# @param hostname the name admins see for this device
# @param staging_dir where the package is kept once checked
# @param dpkg_options more options for dpkg --install
# @param root the file system to install into: / on a running node, an image's
#   directory when building one (dpkg --root, systemctl --root); every path is inside it
# @param service running: enable and start the service now (systemd must be running);
#   enabled: only enable it under root, for the next boot (an image, a chroot)
class sielum::agent (
  String[1] $server,
  String[1] $ca_fingerprint,
  String[1] $package,
  Pattern[/\A[0-9a-f]{64}\z/] $package_sha256,
  Enum['deb', 'file'] $install = 'deb',
  Optional[Sensitive[String[1]]] $token = undef,
  Optional[String[1]] $token_file = undef,
  Pattern[/\A\//] $cert_dir = '/etc/sielum',
  Optional[Pattern[/\A\//]] $agent_path = undef,
  String[1] $hostname = $facts['networking']['fqdn'],
  Pattern[/\A\//] $staging_dir = '/var/cache/sielum',
  Array[String[1]] $dpkg_options = [],
  Pattern[/\A\//] $root = '/',
  Enum['running', 'enabled'] $service = 'running',
) {
  if $token == undef and $token_file == undef {
    fail('sielum::agent needs a token (Sensitive) or a token_file')
  }
  if $install == 'deb' and $cert_dir != '/etc/sielum' {
    fail('sielum::agent: with install => deb, cert_dir stays /etc/sielum (the package\'s unit uses it)')
  }
  $prefix = regsubst($root, '/+$', '')
  $bin = $agent_path ? {
    undef   => $install ? { 'deb' => '/usr/bin/sielum-agent', default => '/usr/local/bin/sielum-agent' },
    default => $agent_path,
  }
  $agent = "${prefix}${bin}"
  $certs = "${prefix}${cert_dir}"
  $staged = "${prefix}${staging_dir}/${regsubst(regsubst($package, '[?#].*$', ''), '^.*/', '')}"
  $unit = "${prefix}/etc/systemd/system/sielum-agent.service"
  # dpkg on another root: the package's maintainer scripts run outside it, with
  # DPKG_ROOT set (they honour it).
  $on_root = $prefix ? { '' => [], default => ["--root=${root}", '--force-script-chrootless'] }

  file { "${prefix}${staging_dir}":
    ensure => directory,
    mode   => '0700',
  }
  # Puppet checks the fetched content against checksum_value before it replaces
  # the file: a mismatch fails this resource, and everything that requires it.
  file { $staged:
    ensure         => file,
    source         => $package,
    checksum       => 'sha256',
    checksum_value => $package_sha256,
    mode           => '0600',
    backup         => false,
  }

  if $install == 'deb' {
    $dpkg = shellquote(['dpkg'] + $on_root + $dpkg_options + ['--install', $staged])
    $query = shellquote(['dpkg-query'] + ($prefix ? { '' => [], default => ["--root=${root}"] }))
    # A first install or an upgrade (postinst restarts an agent that was running).
    exec { 'sielum-agent install':
      command  => $dpkg,
      unless   => "test \"$(${query} -W -f='\${db:Status-Abbrev}\${Version}' sielum-agent 2>/dev/null)\" = \"ii $(dpkg-deb --field ${shellquote($staged)} Version)\"",
      provider => shell,
      path     => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
      require  => File[$staged],
    }
    $installed = Exec['sielum-agent install']
  } else {
    file { $agent:
      ensure         => file,
      source         => $staged,
      checksum       => 'sha256',
      checksum_value => $package_sha256,
      mode           => '0755',
      backup         => false,
    }
    file { $unit:
      ensure  => file,
      mode    => '0644',
      content => regsubst(regsubst(file('sielum/sielum-agent.service'),
        '/opt/sielum/venv/bin/sielum-agent', $bin, 'G'), '/etc/sielum', $cert_dir, 'G'),
    }
    $installed = File[$agent]
  }

  $enroll = [$agent, 'enroll', '--server', $server, '--ca-fingerprint', $ca_fingerprint,
    '--cert-dir', $certs, '--hostname', $hostname]
  if $token_file {
    exec { 'sielum-agent enroll':
      command => $enroll + ['--token-file', $token_file],
      creates => "${certs}/agent.json",
      require => $installed,
    }
  } else {
    exec { 'sielum-agent enroll':
      command     => $enroll,
      # Unwrapped here only. Puppet logs and reports no exec's environment (it
      # cannot redact one, so wrapping it again in Sensitive would only warn);
      # the command stays plain so that a failure shows the agent's reason.
      environment => ["SIELUM_ENROLLMENT_TOKEN=${token.unwrap}"],
      creates     => "${certs}/agent.json",
      require     => $installed,
    }
  }

  $unit_files = $install ? { 'file' => [File[$unit]], default => [] }
  if $service == 'running' {
    service { 'sielum-agent':
      ensure    => running,
      enable    => true,
      provider  => systemd,
      require   => Exec['sielum-agent enroll'],
      subscribe => [$installed] + $unit_files,
    }
  } else {
    # Without a running systemd: enable the unit in the file system, as
    # `systemctl enable` does, and systemd starts it at the next boot.
    exec { 'sielum-agent enable':
      command => ['systemctl', '--root', $root, 'enable', 'sielum-agent.service'],
      path    => ['/usr/bin', '/bin'],
      # Not `creates` on the wants link: under another root it points to a path
      # that exists only inside that root, and Puppet follows links.
      unless  => "systemctl --root ${root} is-enabled --quiet sielum-agent.service",
      require => [Exec['sielum-agent enroll']] + $unit_files,
    }
  }
}
