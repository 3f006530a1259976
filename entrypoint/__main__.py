"""`python -m entrypoint`: the same as the `entrypoint` command."""

from entrypoint.cli import main

raise SystemExit(main())
