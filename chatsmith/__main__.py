from chatsmith.cli import main

main()
