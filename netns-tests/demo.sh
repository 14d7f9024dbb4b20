echo "demo not built yet"; exit 1
