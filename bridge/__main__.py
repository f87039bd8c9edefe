from bridge.app.cli import main

raise SystemExit(main())
