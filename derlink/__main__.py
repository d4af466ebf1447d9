from derlink.cli import main

raise SystemExit(main())
