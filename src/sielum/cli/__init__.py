"""Console scripts: sielum-server, sielum-agent and sielum-admin."""
