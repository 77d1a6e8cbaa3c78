from kt_cluster.cli import main; import sys; sys.exit(main())
