"""What a call can be sent to, how an attempt ends, what happens next, and the health board."""
