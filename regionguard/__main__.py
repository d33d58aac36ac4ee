from regionguard.cli import main

raise SystemExit(main())
