"""``python -m chainfeed`` runs the CLI."""

from chainfeed.cli import main

raise SystemExit(main())
