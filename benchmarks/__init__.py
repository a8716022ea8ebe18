"""The benchmarks behind `deepcluster bench`, `bench-kmeans` (speed) and `bench-quality` (clustering quality).

They use the library and the flow; the library never imports them."""
