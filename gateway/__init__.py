"""Site gateway: a sans-IO core (``gateway.core``) wrapped by the 2030.5 client and device shells."""
