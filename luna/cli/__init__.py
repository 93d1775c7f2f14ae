"""The command lines; each module is one command, thin over the library."""
