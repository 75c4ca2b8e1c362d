"""Where the launcher's data comes from: the bundled corpora and hub datasets (``sources``),
local CSV/JSON files (``files``), and how train, validation and test are split (``splits``)."""
