"""Adapters to the systems we talk to. Each owns the settings model of its section;
none imports a stage or the topology."""
