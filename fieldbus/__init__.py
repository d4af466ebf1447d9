"""Device register maps shared by the gateway (which drives the devices) and the simulators (which serve
them): one declaration each, in a layer below both, so neither imports the other."""
