"""``python -m afarm.stages [--threads N] [--tee LOG] <module> --flag path ...``: start one stage (see
``afarm.stages._launch``; with ``--tee LOG`` its output also goes to LOG: ``afarm.stages._tee``)."""

import sys

from afarm.stages._tee import split_tee

log, argv = split_tee(sys.argv[1:])
if log is None:
    from afarm.stages._launch import main

    main(argv)
else:
    from afarm.stages._tee import main

    sys.exit(main(log, argv))
