"""Test support: real brokers (Mosquitto, NATS) and a throwaway PKI for them."""
