from qwenrecipes.cli import main

main()
