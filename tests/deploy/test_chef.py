"""examples/chef: the cookbook's Ruby parses, its attributes are the ones its recipe
reads and the Puppet class's parameters, and its unit template renders the tested unit.

No Chef client can be installed here (none in Debian, PyPI or npm), so the recipe
is never converged: these checks run Ruby itself (`ruby -c`, the attributes file
evaluated with a stand-in for Chef's `default`, the template with ERB).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import EXAMPLES, UNIT

COOKBOOK = EXAMPLES / "chef" / "sielum"
PUPPET_CLASS = EXAMPLES / "puppet" / "sielum" / "manifests" / "agent.pp"
RUBY = shutil.which("ruby")
# Node attributes are stored on the Chef server in clear: the Puppet class's
# Sensitive `token` becomes an encrypted data bag item there.
CHEF_ONLY = {"token_data_bag", "token_data_bag_item"}
PUPPET_ONLY = {"token"}

# Chef's `default` and `node`, as far as an attributes file needs them.
EVALUATE_ATTRIBUTES = r"""
require 'json'
class Attributes < Hash
  def [](key)
    key?(key) ? super : (self[key] = Attributes.new)
  end
end
DEFAULTS = Attributes.new
def default = DEFAULTS
def node = { 'fqdn' => 'node.example.com' }
eval(File.read(ARGV[0]), binding, ARGV[0])
puts JSON.generate(DEFAULTS)
"""

RENDER_TEMPLATE = r"""
require 'erb'
@agent, @cert_dir = ARGV[1], ARGV[2]
print ERB.new(File.read(ARGV[0])).result(binding)
"""


def ruby(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert RUBY is not None, "ruby is missing (scripts/test-packages.txt)"
    return subprocess.run(
        [RUBY, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def attributes() -> dict[str, object]:
    result = ruby("-e", EVALUATE_ATTRIBUTES, str(COOKBOOK / "attributes" / "default.rb"))
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)["sielum"]["agent"]
    return found


def puppet_parameters() -> dict[str, str | None]:
    """The class's parameters -> their default (None when they have none)."""
    text = PUPPET_CLASS.read_text()
    signature = text.split("class sielum::agent (", 1)[1].split(") {", 1)[0]
    found: dict[str, str | None] = {}
    for match in re.finditer(r"\$(\w+)(?:\s*=\s*(.+?))?,\s*$", signature, re.MULTILINE):
        found[match[1]] = match[2]
    return found


def test_the_cookbook_s_ruby_parses(tmp_path: Path) -> None:
    files = sorted(COOKBOOK.rglob("*.rb"))
    assert [f.relative_to(COOKBOOK).as_posix() for f in files] == [
        "attributes/default.rb",
        "metadata.rb",
        "recipes/default.rb",
    ]
    for file in files:
        result = ruby("-c", str(file))
        assert (result.returncode, result.stdout) == (0, "Syntax OK\n"), result.stderr
    # The check can fail: a recipe with one `end` too few is refused.
    broken = tmp_path / "broken.rb"
    recipe = (COOKBOOK / "recipes" / "default.rb").read_text()
    broken.write_text(recipe[: recipe.rindex("end")])
    assert ruby("-c", str(broken)).returncode != 0


def test_attributes_are_what_the_recipe_reads_and_the_puppet_class_s_parameters() -> None:
    defined = attributes()
    recipe = (COOKBOOK / "recipes" / "default.rb").read_text()
    assert "agent = node['sielum']['agent']" in recipe
    read = set(re.findall(r"\bagent\['(\w+)'\]", recipe))
    assert read == set(defined), (sorted(read - set(defined)), sorted(set(defined) - read))
    parameters = puppet_parameters()
    assert set(defined) - CHEF_ONLY == set(parameters) - PUPPET_ONLY
    # Where the class has a plain default, the cookbook has the same one.
    for name, default in parameters.items():
        if default is not None and default.startswith("'"):
            assert defined[name] == default.strip("'"), name
    assert defined["dpkg_options"] == [] and parameters["dpkg_options"] == "[]"
    assert defined["hostname"] == "node.example.com"  # node['fqdn'], as the class's fqdn fact
    assert (defined["token_file"], defined["agent_path"]) == (None, None)


def test_the_unit_template_renders_the_tested_unit() -> None:
    template = str(COOKBOOK / "templates" / "sielum-agent.service.erb")
    rendered = ruby(
        "-e", RENDER_TEMPLATE, template, "/opt/sielum/venv/bin/sielum-agent", "/etc/sielum"
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == UNIT.read_text()
    moved = ruby("-e", RENDER_TEMPLATE, template, "/usr/local/bin/sielum-agent", "/srv/sielum")
    assert "\nExecStart=/usr/local/bin/sielum-agent run --cert-dir /srv/sielum\n" in moved.stdout
    assert "\nReadWritePaths=-/srv/sielum\n" in moved.stdout


@pytest.mark.parametrize(
    "needle",
    [
        "checksum agent['package_sha256']",  # remote_file checks what it fetched
        "sensitive true",  # the enroll resource's environment is never shown
        'creates "#{certs}/agent.json"',  # enrolls once
        "'--force-script-chrootless'",  # another root: the package's scripts honour DPKG_ROOT
    ],
)
def test_the_recipe_does_what_the_puppet_class_does(needle: str) -> None:
    assert needle in (COOKBOOK / "recipes" / "default.rb").read_text()
