"""Heavy work beside the chats: the Inside views' passes and the embedding evaluations. Each runs in steps; between
two steps it may rest (a fair share of the cores for the chats, fair_share.py), stop (its caller cancelled,
cancel.py) or wait its turn (a bound on how many run at once, turns.py). Every door into the app (the page, the
queue's API, /run/, MCP, a direct call to core) reaches the same objects, held by the host (workload.py).
May import core.config, core.errors and core.checks; nothing else in core (the engine, the evaluation and the views
import it)."""
