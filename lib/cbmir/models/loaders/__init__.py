"""One module per loader family. Every module here is imported by `registry.families()`; a module adds its
family with `@register_family`, so a new family is one new module here plus its presets in presets.yaml."""
