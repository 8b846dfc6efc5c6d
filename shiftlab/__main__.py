from shiftlab.cli import main

raise SystemExit(main())
