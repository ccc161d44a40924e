from rdc.cli import main

main()
