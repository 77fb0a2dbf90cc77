"""The scripts the guest runs (`python3 -S guest_scripts/<name>.py`, importing each other as
top-level modules), and a package for the host, which imports `guest_scripts.contract`."""
