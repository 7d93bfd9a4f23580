"""The embedded finalizer: authorized, audited, exactly-once remediation of wedged batches.

Imported only when remediation is enabled (or asked for on the command line): the exporter
core never needs numpy, scipy or choix. Modules, one job each:

- model       actions, outcomes, an action's Result
- bt          Bradley-Terry scores and standard errors (choix, as upstream)
- scales      the grade scales and their priors
- projection  anchor calibration and student grade projection (as upstream)
- events      the three completion events' payloads, and what a result says (R3)
- store       the SQL the actions run
- refinalize  the re-finalization transaction (row locks + guard = exactly once), the
              healing policy per event type (R1-R5, contracts checked before writing), and
              what narrows the race with the CJ service (the status fence, quiet checks,
              the final checks before COMMIT)
- anchors     the anchor-flag backfill
- audit       the audit table and the maintenance switch
- valves      authorization and the safety valves (pure)
- candidates  which batches need an action (from the view)
- leader      advisory-lock leader election on a dedicated connection
- metrics     the finalizer's metric families
- service     the remediation cycle and its wiring
- manual      `remediate`: one action on one batch by hand, and the pause switch

Nothing else is imported here so that `exporter.finalizer.audit` (install-view) stays light.
"""

import os

# One BLAS thread. numpy's OpenBLAS otherwise starts a thread per core that spin-waits between
# calls: for the finalizer's small matrices (one row per essay) on an exporter's small, busy
# host that made the BT fit 20-40x slower (bench_finalizer: 12 ms -> 400 ms on 2 loaded cores).
# setdefault: an operator's explicit setting wins. It only takes effect if numpy is first
# imported after this package, which is the case in the exporter (the core never imports it).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
