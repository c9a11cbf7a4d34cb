"""One study per notebook, on top of the core: each turns the core's measurements into the
notebook's tables and, through tested rules, its claims' verdicts. A study imports the core,
never another study."""
