"""``python -m router`` runs the CLI (what the systemd unit's ExecStart may use)."""

from router.cli import main

main()
