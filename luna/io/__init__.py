"""Reading and writing files safely, for every layer of luna: atomic writes that name a full disk,
and CSV columns read with errors that name the file, the line and the column."""
