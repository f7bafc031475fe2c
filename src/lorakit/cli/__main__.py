from lorakit.cli import command

command()
