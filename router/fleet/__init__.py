"""The fleet as the router sees it: capability records, their index, and views of it."""
