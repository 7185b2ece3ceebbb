"""GPU memory: how big each model process is, what may run at once, and how versions switch."""
