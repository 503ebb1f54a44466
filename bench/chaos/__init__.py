"""A chaos run (issue 25): faults and operator actions under thousands of connections on N
vipctl routers behind an upstream BIRD (ECMP + BFD), every reset accounted.

    python -m bench.chaos --seed S --events N --conns C --routers R [--json FILE]

schedule.py draws the seeded events (pure), load.py is the client side (TCP connections and
a numbered UDP stream, run in the lab's client namespace), account.py judges every
connection and datagram against the events as they ran (pure), run.py builds the lab and
plays the schedule.
"""
