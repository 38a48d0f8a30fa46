from maskd.cli import main

raise SystemExit(main())
