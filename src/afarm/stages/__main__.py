"""``python -m afarm.stages <module> --flag path ...``: start one stage (see ``afarm.stages._launch``)."""

from afarm.stages._launch import main

main()
