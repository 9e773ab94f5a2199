from domaintune.cli import app

app(prog_name="domaintune")
