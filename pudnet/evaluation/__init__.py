"""Methods scored on tasks (``episodes``), the whole-dataset protocol (``whole``) and report figures (``plots``)."""
