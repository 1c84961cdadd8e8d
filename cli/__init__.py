"""flowrun's command line (Typer). Thin: parse, call the engine, render."""
