"""ControlNet tests: units, models, application, routes."""
