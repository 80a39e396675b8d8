//! CIFAR-10 / CIFAR-100 binary files.
