"""The one-shot commands, one module each; `serve` is exporter.service, `demo` exporter.demo.

- inspect       `inspect BATCH`: everything the view knows about a batch, plus its outbox events
- charges       `charges`: every CJ run charged more than once, with the excess to refund
- install_view  `install-view`: the functions, views and indexes (and the finalizer's tables)
- remediate     `remediate`: one finalizer action on one batch by hand, or the pause switch
- healthcheck   `healthcheck [--ready]`: ask the running exporter whether it is alive (ready)
- check_config  `check-config [--connect]`: validate everything `serve` would use
- assets        `assets [NAME] [--write DIR]`: where the shipped files are, or copies of them
"""
