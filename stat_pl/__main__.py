from stat_pl.cli import main

main()
