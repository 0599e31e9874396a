"""Start the server with A1111's command-line flags (drop-in for A1111's launch.py)."""
from webui_api.cli import main

if __name__ == "__main__":
    main()
