"""A bzImage from a source: Debian's package or a tree, a ref and a series (git am), the config
fragments checked after olddefconfig, an out-of-tree build reused when nothing changed."""
