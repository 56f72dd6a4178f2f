"""One description of the PBX side (YAML) rendered, checked, diffed and applied to Asterisk."""
