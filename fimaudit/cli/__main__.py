from fimaudit.cli import main

main()
