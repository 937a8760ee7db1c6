"""Corral in other people's systems: Home Assistant over MQTT (discovery, world state) and its
REST API."""
