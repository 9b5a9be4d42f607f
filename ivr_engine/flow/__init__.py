"""The IVR flow language: YAML flows -> checked model -> interpreter over a CallChannel.

For the composition root::

    registry = FlowRegistry(settings.flows.deploy_dir, entry=settings.flows.entry,
                            catalogue=catalogue, fallback=settings.flows.dir)
    registry.install_sighup(loop)
    interp = Interpreter(registry.current(), Services(sources, queue, audit, observer), catalogue)
    outcome = await interp.run(channel, flows=registry.current())   # per call

`sources` maps data-source names (as the flows declare them under `sources:`, e.g.
"cif.caller") to async callables; see `services` for the protocols and docs/flows.md.
Modules: model (frozen dataclasses), expr (typed expressions), yamltree/fields/parser/
node_parsers/loader (YAML -> model), lint (set-wide checks), interpreter, services, fake
(offline channel and helpers), deploy (versioned store, registry), bench.
"""
