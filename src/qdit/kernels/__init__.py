"""Integer kernels for the Q-DiT product: shared formats, the exact reference, a pure-PyTorch path, the
compiled CPU (AMX) path and a Triton GPU path. Imports only :mod:`qdit.quant`; nothing loads at import."""
