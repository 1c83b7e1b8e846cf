"""Plain-torch network definitions shared by the zoo's models."""
