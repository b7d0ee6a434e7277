from muxplan.cli import main

main()
