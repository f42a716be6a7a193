"""Plain data and rules of the domain. No I/O, and no import of anything else in `shared`."""
