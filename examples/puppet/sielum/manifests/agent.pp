# @summary Installs the Sielum agent in its own virtualenv, enrolls this node once
#   and enables the agent service.
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
#   sielum::agent::wheel: "puppet:///modules/profile/sielum-0.1.0-py3-none-any.whl"
#   sielum::agent::token: ENC[PKCS7,…]
#   lookup_options:
#     sielum::agent::token:
#       convert_to: "Sensitive"
#
# @param server the enroll server, https://HOST:8443
# @param ca_fingerprint `sielum-server fingerprint` on the server (public)
# @param wheel the sielum wheel: a puppet:/// URL or a path on the node
# @param token the enrollment token, Sensitive
# @param token_file or a file on the node that holds the token
# @param home where the agent's virtualenv lives
# @param cert_dir the agent's cert dir
# @param hostname the name admins see for this device
# @param virtualenv_command makes a virtualenv; the venv's path is appended
# @param pip_options options for `pip install` (an index mirror, ...)
# @param service running: enable and start the service now (systemd must be running);
#   enabled: only enable it under systemd_root, for the next boot (an image, a chroot)
# @param systemd_root the root whose /etc/systemd/system gets the unit
class sielum::agent (
  String[1] $server,
  String[1] $ca_fingerprint,
  String[1] $wheel,
  Optional[Sensitive[String[1]]] $token = undef,
  Optional[String[1]] $token_file = undef,
  String[1] $home = '/opt/sielum',
  String[1] $cert_dir = '/etc/sielum',
  String[1] $hostname = $facts['networking']['fqdn'],
  String[1] $virtualenv_command = '/usr/bin/python3 -m venv',
  String $pip_options = '--disable-pip-version-check',
  Enum['running', 'enabled'] $service = 'running',
  String[1] $systemd_root = '/',
) {
  if $token == undef and $token_file == undef {
    fail('sielum::agent needs a token (Sensitive) or a token_file')
  }
  $wheel_name = regsubst($wheel, '^.*/', '')
  $version = regsubst($wheel_name, '^sielum-([^-]+)-.*$', '\1')
  $venv = "${home}/venv"
  $agent = "${venv}/bin/sielum-agent"
  $unit_dir = "${regsubst($systemd_root, '/$', '')}/etc/systemd/system"
  $unit = "${unit_dir}/sielum-agent.service"

  file { [$home, "${home}/dist"]:
    ensure => directory,
    mode   => '0755',
  }
  file { "${home}/dist/${wheel_name}":
    ensure => file,
    source => $wheel,
    mode   => '0644',
  }
  exec { 'sielum-agent virtualenv':
    command => "${virtualenv_command} ${venv}",
    creates => "${venv}/bin/python",
    path    => ['/usr/local/bin', '/usr/bin', '/bin'],
    require => File[$home],
  }
  # Installs when the venv lacks this wheel's version (a first install, an upgrade).
  exec { 'sielum-agent install':
    command => "${venv}/bin/pip install ${pip_options} ${home}/dist/${wheel_name}",
    unless  => "${venv}/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version(\"sielum\") != \"${version}\")'",
    require => [Exec['sielum-agent virtualenv'], File["${home}/dist/${wheel_name}"]],
  }

  $enroll = [$agent, 'enroll', '--server', $server, '--ca-fingerprint', $ca_fingerprint,
    '--cert-dir', $cert_dir, '--hostname', $hostname]
  if $token_file {
    exec { 'sielum-agent enroll':
      command => $enroll + ['--token-file', $token_file],
      creates => "${cert_dir}/agent.json",
      require => Exec['sielum-agent install'],
    }
  } else {
    exec { 'sielum-agent enroll':
      command     => $enroll,
      # Unwrapped here only. Puppet logs and reports no exec's environment (it
      # cannot redact one, so wrapping it again in Sensitive would only warn);
      # the command stays plain so that a failure shows the agent's reason.
      environment => ["SIELUM_ENROLLMENT_TOKEN=${token.unwrap}"],
      creates     => "${cert_dir}/agent.json",
      require     => Exec['sielum-agent install'],
    }
  }

  file { $unit:
    ensure  => file,
    mode    => '0644',
    content => regsubst(regsubst(file('sielum/sielum-agent.service'), '/opt/sielum', $home, 'G'),
      '/etc/sielum', $cert_dir, 'G'),
  }
  if $service == 'running' {
    service { 'sielum-agent':
      ensure    => running,
      enable    => true,
      provider  => systemd,
      require   => Exec['sielum-agent enroll'],
      subscribe => [File[$unit], Exec['sielum-agent install']],
    }
  } else {
    # Without a running systemd: enable the unit in the file system, as
    # `systemctl enable` does, and systemd starts it at the next boot.
    exec { 'sielum-agent enable':
      command => ['systemctl', '--root', $systemd_root, 'enable', 'sielum-agent.service'],
      path    => ['/usr/bin', '/bin'],
      # Not `creates` on the wants link: under another root it points to a path
      # that exists only inside that root, and Puppet follows links.
      unless  => "systemctl --root ${systemd_root} is-enabled --quiet sielum-agent.service",
      require => [File[$unit], Exec['sielum-agent enroll']],
    }
  }
}
